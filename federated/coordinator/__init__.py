"""The coordinator side: the ServerApp loop (plain and SecAgg+), vetting of partner replies, the run card.
"""
