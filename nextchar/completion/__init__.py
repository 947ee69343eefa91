"""Autocomplete: ranked suggestions while a person types, from any checkpoint.

Reading order: `config` (modes, limits, precisions and every default, torch-free), `search`
(beam search over completions) and `lockstep` (many searches answered by one model call a
round), `states` (the cache of model states along what was typed), `completer` (`Completer`:
suggestions for any text), `session` (`TypingSession`: keystroke by keystroke), `lexicon`
(completions from a closed list), `typos` (edits within distance 1), `personal` (one person's
adapted output layer).
"""
