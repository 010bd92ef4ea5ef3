"""Foundation every layer uses: staged writes and locks (`fileio`), signing keys (`keys`), the one set of defaults (`defaults`).
"""
