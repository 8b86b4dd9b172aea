"""copyguard.pipelines: the jobs people run (Beam curation, audit, demo) and the ``copyguard`` CLI."""
