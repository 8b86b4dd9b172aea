"""copyguard.mitigation: memorization detection, attribution and inference-time guidance."""
