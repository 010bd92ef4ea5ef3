"""Vertical federation: a label party and a feature party train one model on the customers they share.

psi.py       ECDH private set intersection on normalised join keys (openmined-psi), both sides learn
             the intersection and one agreed order, nothing about the other's non-members
party.py     a party's file: its role, its policy, its join keys and their normalisation
channel.py   Flower RecordDicts between the parties, serialised, counted and kept for inspection
split.py     split learning with DP: clipped, noised embeddings up; noised gradients down
workflow.py  the whole run: consent (minimise), PSI, training, budget charges, ledgers, card

No torch or flwr at import of this package; see docs/vertical.md.
"""
