"""The self-contained HTML report a compliance officer and a data scientist can both read.

`evidence` gathers what a run left behind (ledgers, release reports, model cards) and checks that
they belong together; `charts` draws inline images; `html` lays the page out. No network fetches:
CSS is inline and images are base64 data URIs.
"""
