"""The policy file: its validated schema (`schema`) and the declarative pieces the algorithms consume (`spec`).
"""
