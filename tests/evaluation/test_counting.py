"""The BPC of counting characters, the floor a large alphabet's model must first get under
(nextchar.evaluation.bpc.unigram_bpc)."""

from __future__ import annotations

import math
import random

import pytest

from nextchar.evaluation.bpc import unigram_bpc


def test_counts_are_add_one_smoothed_over_the_characters_of_both_texts():
    # 4 training characters + 2 symbols = 6: a (3 + 1) / 6, b (1 + 1) / 6; with z, 3 symbols: z (0 + 1) / 7
    assert unigram_bpc("aaab", "ab") == pytest.approx((math.log2(6 / 4) + math.log2(6 / 2)) / 2)
    assert unigram_bpc("aaab", "z") == pytest.approx(math.log2(7 / 1))
    assert unigram_bpc("aaab", "") == 0.0


def test_uniform_draws_cost_log2_of_the_alphabet_and_skewed_ones_less():
    rng = random.Random(0)
    alphabet = [chr(0x4E00 + i) for i in range(256)]
    uniform = "".join(rng.choices(alphabet, k=200_000))
    assert unigram_bpc(uniform[:180_000], uniform[180_000:]) == pytest.approx(8.0, abs=0.02)
    skewed = "".join(rng.choices(alphabet, weights=[1 / (r + 1) for r in range(256)], k=200_000))
    assert unigram_bpc(skewed[:180_000], skewed[180_000:]) < 7.5
