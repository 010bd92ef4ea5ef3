"""What a run leaves behind as evidence: the signed ledger, the model card, the model store and the HTML report.
"""
