"""Recall: the memory's next-symbol distribution p_mem (estimator), and its mixture with the RNN (mixer).

The RNN generalises but cannot recall a text it saw a dozen times; an exact memory of the text
(nextchar.data.memory, a suffix array) recalls perfectly and generalises not at all. Here the
memory's counts become a distribution (estimator.py), and a small learned mixer combines it
with the RNN's, position by position (mixer.py).
"""
