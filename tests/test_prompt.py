"""Unit tests: OpenChat's template renders the model authors' exact token ids."""

from __future__ import annotations

import pytest

from openchat.devmodel import mistral_sentencepiece_model
from openchat.generation.template import (
    OpenChatTemplate,
    OpenChatTokenizer,
    PieceCache,
    Turn,
)
from openchat.vocabulary import BOS_ID, END_OF_TURN_ID
from tests.conftest import REFERENCE_HI_IDS

USER_PREFIX = [420, 6316, 28781, 3198, 3123, 1247, 28747]        # "GPT4 Correct User:"
ASSISTANT_PREFIX = [420, 6316, 28781, 3198, 3123, 21631, 28747]  # "GPT4 Correct Assistant:"


@pytest.fixture(scope="module")
def template() -> OpenChatTemplate:
    return OpenChatTemplate(OpenChatTokenizer(mistral_sentencepiece_model()))


def test_one_user_turn_equals_reference(template):
    assert template.render_chat([Turn("user", "Hi")], "GPT4 Correct") == REFERENCE_HI_IDS


def test_pieces_are_tokenized_separately_not_joined(template):
    tokenizer = template.tokenizer
    joined = tokenizer.encode("GPT4 Correct User: Hi")
    separate = USER_PREFIX + tokenizer.encode("Hi")
    assert separate == REFERENCE_HI_IDS[1:9]
    # The joined text tokenizes "User:" and " Hi" the same way here, but the point is the
    # template never relies on that: check the prefix really is its own piece.
    assert template.role_prefix("GPT4 Correct", "user") == USER_PREFIX
    assert joined[:7] == USER_PREFIX


def test_system_message_has_no_role_prefix(template):
    ids = template.render_chat([Turn("system", "Be brief."), Turn("user", "Hi")], "GPT4 Correct")
    system = template.tokenizer.encode("Be brief.")
    assert ids[: 2 + len(system)] == [BOS_ID, *system, END_OF_TURN_ID]
    assert ids[1 + len(system) + 1:] == REFERENCE_HI_IDS[1:]


def test_multi_turn_history(template):
    encode = template.tokenizer.encode
    ids = template.render_chat(
        [Turn("user", "Hi"), Turn("assistant", "Hello!"), Turn("user", "Bye")], "GPT4 Correct"
    )
    expected = (
        [BOS_ID] + USER_PREFIX + encode("Hi") + [END_OF_TURN_ID]
        + ASSISTANT_PREFIX + encode("Hello!") + [END_OF_TURN_ID]
        + USER_PREFIX + encode("Bye") + [END_OF_TURN_ID] + ASSISTANT_PREFIX
    )
    assert ids == expected


def test_math_condition_changes_the_prefix(template):
    ids = template.render_chat([Turn("user", "1+1?")], "Math Correct")
    math_prefix = template.tokenizer.encode("Math Correct User:")
    assert ids[1: 1 + len(math_prefix)] == math_prefix
    assert math_prefix != USER_PREFIX
    assert ids[-len(template.tokenizer.encode("Math Correct Assistant:")):] == (
        template.tokenizer.encode("Math Correct Assistant:")
    )


def test_assistant_last_is_left_open(template):
    ids = template.render_chat([Turn("user", "Hi"), Turn("assistant", "Sure,")], "GPT4 Correct")
    assert ids == REFERENCE_HI_IDS + template.tokenizer.encode("Sure,")


def test_several_system_messages_join_in_one_block(template):
    ids = template.render_chat(
        [Turn("system", "A."), Turn("user", "Hi"), Turn("system", "B.")], "GPT4 Correct"
    )
    block = template.tokenizer.encode("A.\n\nB.")
    assert ids[: len(block) + 2] == [BOS_ID, *block, END_OF_TURN_ID]


def test_raw_text_prompt(template):
    assert template.render_text("Hi") == [BOS_ID, 15359]


def test_decode_handles_added_tokens(template):
    tokenizer = template.tokenizer
    assert tokenizer.decode([15359, END_OF_TURN_ID, 15359]) == "HiHi"
    assert tokenizer.decode([15359, END_OF_TURN_ID], skip_special_tokens=False) == (
        "Hi<|end_of_turn|>"
    )


def test_a_resent_history_renders_the_same_ids_from_the_cache(template):
    turns = [Turn("system", "Be brief."), Turn("user", "Hi"), Turn("assistant", "Hello!"),
             Turn("user", "Name three rivers.")]
    fresh = OpenChatTemplate(template.tokenizer)
    first = fresh.render_chat(turns, "GPT4 Correct")
    again = fresh.render_chat(turns, "GPT4 Correct")
    assert first == again == template.render_chat(turns, "GPT4 Correct")
    assert again is not first  # each render is a new list: the cached pieces stay intact


def test_piece_cache_keeps_at_most_its_token_budget():
    calls = []

    def encode(text):
        calls.append(text)
        return [len(text)] * len(text)

    cache = PieceCache(encode, max_tokens=10)
    assert cache("abcd") == [4] * 4 and cache("abcd") == [4] * 4
    assert calls == ["abcd"]
    cache("efghij")  # 4 + 6 = 10 tokens: both kept
    cache("abcd")  # now the most recently used
    cache("kl")  # over budget: "efghij", the least recently used, goes
    cache("abcd")
    cache("efghij")
    assert calls == ["abcd", "efghij", "kl", "efghij"]
    assert cache("x" * 11) == [11] * 11  # larger than the budget: encoded, never kept
