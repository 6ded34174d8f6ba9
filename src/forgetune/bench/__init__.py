"""The benchmarks: an application on top of the library, which never imports it.

`harness` (resume, statistics, tables) serves `noisy` (`forgetune bench NAME`: methods x seeds on data with ground-truth
noise) and `unlearning` (`forgetune bench unlearn`); `targets` checks the quality issue's targets from the rows;
`data` generates each benchmark's splits.
"""
