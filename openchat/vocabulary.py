"""OpenChat-3.5's vocabulary: Mistral-7B-v0.1's 32000 sentencepiece pieces plus two added
tokens. The one place these ids are written; the template, the wire types' bounds, the
sampling stop and the dev model all read them from here.
"""

from __future__ import annotations

BOS_ID = 1
SENTENCEPIECE_SIZE = 32000  # Mistral-7B-v0.1's tokenizer.model
END_OF_TURN = "<|end_of_turn|>"
END_OF_TURN_ID = 32000
PAD = "<|pad_0|>"
PAD_ID = 32001
SPECIAL_TOKENS = {END_OF_TURN_ID: END_OF_TURN, PAD_ID: PAD}
VOCAB_SIZE = 32002
