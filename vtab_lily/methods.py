"""Facts about the methods that need no torch, shared by the adapters, the runner and the readers
(leaderboards), which all import them from here, below each of them.
"""

from __future__ import annotations

# Adapters whose settings are wholly the user's (``peft``: a PEFT config file). Their runs have an
# official recipe but no official adapter setup, so their deviations hold the recipe's alone and
# an empty list does not mean "official" (the leaderboard says ``peft config``).
NO_OFFICIAL_SETUP = frozenset({"peft"})
