"""The partner side: the lean Flower ClientApp, the long-lived training worker, the gated SuperNode.
"""
