"""copyguard.pipelines.lab: the lab, a world small enough to run on a laptop where memorization is known.

- sample data (:mod:`~copyguard.pipelines.lab.sample_data`): real photos and captions as WebDataset shards
  with planted duplicates and a ground truth;
- the lab model (:mod:`~copyguard.pipelines.lab.trainer`, :mod:`~copyguard.pipelines.lab.architecture`):
  a small Stable Diffusion trained from scratch in diffusers format;
- its evaluation (:mod:`~copyguard.pipelines.lab.evaluate`), model card (:mod:`~copyguard.pipelines.lab.card`),
  the whole run (:mod:`~copyguard.pipelines.lab.run`) and the cache that trains each preset once
  (:mod:`~copyguard.pipelines.lab.cache`).

The lab sits at the top of the dependency chain because it exercises every stage (it curates its own data).
"""
