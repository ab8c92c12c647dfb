"""How event and command types read: events in the past tense (``task.created``),
commands in the imperative (``task.assign``). The word lists are data, built by hand;
:func:`check_name` reads them and suggests the other form of a verb it knows.

The word checked is the last ``_``-separated word of the type's last part for an event
(``task.due_date_changed``: ``changed``; before a particle: ``cart.checked_out``:
``checked``), the first one for a command
(``task.send_reminder``: ``send``). An event must end in a past form or a state this
module knows (``due``), or in ``-ed`` (a regular past tense it has not listed); a
command must not be a past form or an ``-ing`` form (any other word may be an
imperative). A name these rules refuse on purpose is registered with
``name_check=False``.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["KINDS", "Kind", "check_name", "past_of"]

Kind = Literal["event", "command"]
KINDS: tuple[Kind, ...] = ("event", "command")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Imperative -> past participle, where the participle is not the verb plus -(e)d.
IRREGULAR: dict[str, str] = {
    "be": "been", "begin": "begun", "bind": "bound", "bring": "brought",
    "build": "built", "buy": "bought", "catch": "caught", "choose": "chosen",
    "deal": "dealt", "dig": "dug", "do": "done", "draw": "drawn", "drive": "driven",
    "eat": "eaten", "fall": "fallen", "feed": "fed", "feel": "felt", "fight": "fought",
    "find": "found", "fly": "flown", "forbid": "forbidden", "forget": "forgotten",
    "forgive": "forgiven", "freeze": "frozen", "get": "got", "give": "given",
    "go": "gone", "grow": "grown", "hang": "hung", "have": "had", "hear": "heard",
    "hide": "hidden", "hold": "held", "keep": "kept", "know": "known", "lay": "laid",
    "lead": "led", "leave": "left", "lend": "lent", "lose": "lost", "make": "made",
    "mean": "meant", "meet": "met", "mistake": "mistaken", "override": "overridden",
    "overtake": "overtaken", "pay": "paid", "prepay": "prepaid", "rebuild": "rebuilt",
    "redo": "redone", "repay": "repaid", "resend": "resent", "retake": "retaken",
    "rewrite": "rewritten", "ride": "ridden", "ring": "rung", "rise": "risen",
    "say": "said", "see": "seen", "seek": "sought", "sell": "sold", "send": "sent",
    "shake": "shaken", "shoot": "shot", "show": "shown", "sing": "sung", "sit": "sat",
    "sleep": "slept", "slide": "slid", "speak": "spoken", "spend": "spent",
    "spin": "spun", "stand": "stood", "steal": "stolen", "stick": "stuck",
    "strike": "struck", "swear": "sworn", "sweep": "swept", "swing": "swung",
    "take": "taken", "teach": "taught", "tear": "torn", "tell": "told",
    "think": "thought", "throw": "thrown", "undo": "undone", "understand": "understood",
    "unfreeze": "unfrozen", "uphold": "upheld", "wake": "woken", "wear": "worn",
    "win": "won", "withdraw": "withdrawn", "withhold": "withheld", "write": "written",
}  # fmt: skip

# Verbs whose past participle is the verb itself: fine for either kind.
SAME: frozenset[str] = _words(
    "bet bid broadcast cast cost cut forecast hit let put quit read reset set shut "
    "split spread upset"
)

# Regular verbs that double their last consonant: ship -> shipped.
DOUBLED: frozenset[str] = _words(
    "admit ban cancel commit control drop enrol equip flag fulfil label log map omit "
    "patrol permit plan refer rob "
    "ship shop stop submit tag transfer trim unmap unpin pin veto"
)

# Regular verbs tidings knows as commands (the imperative; the past is -(e)d).
REGULAR: frozenset[str] = _words(
    """accept activate add allocate approve archive assign attach authorize authorise
    ban bill block book calculate cancel capture change charge check claim clear close
    collect comment commit complete confirm connect copy correct create deactivate
    decline delete deliver deny deploy deposit detach disable disconnect dispatch
    download drop edit enable end enqueue enrol enroll escalate evaluate expire export
    extend fail finish flag follow fulfil fulfill generate grant import invite invoice
    issue join label link lock log mark merge migrate move notify open order pack park
    pause pin place plan post process promote provision publish purge queue rate
    reactivate receive record redeem refund register reject release remind remove
    rename renew reopen replay reply report request reschedule reserve resolve restart
    restore resume retry return revoke review rollback rotate route save schedule
    scan score settle ship sign snooze start stop store submit subscribe suspend sync
    tag terminate track transfer trigger unblock unlink unlock unpin unsubscribe update
    upgrade upload validate verify void"""
)

# Particles of phrasal verbs: the verb is the word before (cart.checked_out).
PARTICLES: frozenset[str] = _words("up down in out off on over back away through")

# Event words that are not past participles: states an event may announce.
STATES: frozenset[str] = _words(
    "due overdue late ready full empty low high idle stale available unavailable "
    "online offline expired"
)


def past_of(verb: str) -> str:
    """The past participle of ``verb`` (``create`` -> ``created``, ``send`` -> ``sent``)."""
    if verb in IRREGULAR:
        return IRREGULAR[verb]
    if verb in SAME:
        return verb
    if verb in DOUBLED:
        return verb + verb[-1] + "ed"
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and len(verb) > 1 and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


_COMMANDS = REGULAR | SAME | frozenset(IRREGULAR)
# Past participle -> imperative, for every verb above (cancelled and canceled both).
_IMPERATIVE: dict[str, str] = {past_of(v): v for v in _COMMANDS} | {
    "canceled": "cancel",
    "labeled": "label",
    "fulfilled": "fulfil",
}
_EVENT_WORDS = frozenset(_IMPERATIVE) | STATES


def check_name(type: str, kind: str) -> str | None:
    """None if ``type`` reads as its ``kind`` says, else what is wrong with it, with
    the right form where one is known (``did you mean task.created?``)."""
    domain, _, action = type.rpartition(".")
    words = action.split("_")
    if kind == "event":
        verb = len(words) - 2 if len(words) > 1 and words[-1] in PARTICLES else len(words) - 1
        word = words[verb]
        if word in _EVENT_WORDS or (word.endswith("ed") and word not in _COMMANDS):
            return None
        if word in _COMMANDS:
            better = f"{domain}.{'_'.join([*words[:verb], past_of(word), *words[verb + 1 :]])}"
            return f"an event is named in the past tense: did you mean {better}?"
        return (
            f"an event is named in the past tense, and {word!r} is not a past form "
            f"tidings knows (e.g. task.created, task.reminder_due); if it is one, "
            f"register it with name_check=False"
        )
    word = words[0]
    if word in _IMPERATIVE and word not in SAME:
        better = f"{domain}.{'_'.join([_IMPERATIVE[word], *words[1:]])}"
        return f"a command is named in the imperative: did you mean {better}?"
    if word.endswith("ing") or (word.endswith("ed") and word not in _COMMANDS):
        return (
            f"a command is named in the imperative (e.g. task.assign), not {word!r}; "
            "if it is one, register it with name_check=False"
        )
    return None
