"""The differential-privacy engine: secret noise (`secure_noise`), DP-SGD (`dpsgd`), networks, noise calibration
(`accounting`), the one training core (`training`), private tuning, and the per-dataset budget (`budget`).
"""
