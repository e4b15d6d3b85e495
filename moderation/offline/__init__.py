"""Offline tools: scoring files, calibration, its report, labels, rescoring for `policy diff`."""
