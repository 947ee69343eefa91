"""Evaluation: what a model, an adapting model and a completer are worth, measured.

`bpc` scores a model in bits per character (used while training too); `dynamic` scores it while
it adapts to the text it reads (dynamic evaluation); `keystrokes` simulates a person typing
with autocomplete and counts the keystrokes saved (`nextchar eval-complete`).
"""
