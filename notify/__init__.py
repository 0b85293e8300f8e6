"""Escalation that reaches a person: policy, channels, delivery log, receivers for tests and the demo."""
