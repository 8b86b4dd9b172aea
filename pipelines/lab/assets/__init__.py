"""Data files shipped with copyguard: the ``sample-data`` caption pool and image-pool list (see ATTRIBUTION.md)."""
