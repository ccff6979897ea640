"""The paper's accuracy tables (2-8) reproduced on the zoo: ``python -m benchmarks.accuracy TABLE``.

Modules: :mod:`.sets` names the image sets, :mod:`.cache` keeps every per-image loss on disk
so tables share inversions and a stopped run resumes, :mod:`.tables` defines the rows and
scores them, :mod:`.workers` fills the cache with one pinned process per core, :mod:`.plot`
draws the calibrated-loss distributions.
"""
