"""Operations: settings, logs, metrics."""
