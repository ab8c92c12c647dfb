"""The research pipeline of docs/agents.md: two AI agents as slow consumers of events,
against any OpenAI-compatible chat API or a local stand-in (``python -m examples.agents
demo``)."""
