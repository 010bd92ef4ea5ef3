"""The self-contained HTML report a compliance officer and a data scientist can both read.

`evidence` gathers what a run left behind (ledgers verified against trusted keys, release reports,
model cards) and checks that they belong together; `summary` states the compliance summary (policy,
budget per dataset, each control passed / failed / not applicable / not evidenced); `sections` and
`flow` turn artifacts into plain data; `charts` draws PNG data URIs; `html` renders everything
through the autoescaping Jinja2 template `templates/report.html.j2`. No markup is built from
strings, the page has no script, and it fetches nothing.
"""
