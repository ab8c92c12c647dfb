"""The crash matrix: real processes SIGKILLed at each dangerous point (see
``docs/reliability.md``)."""
