"""Reproduce the papers' claims at small scale; write docs/reproductions.md and its pages.

    python -m simulations.reproduce [--out docs] [--runs DIR] [--smoke]

Every number in the report comes from runs of this package: each claim's runs go into one
compare directory under the runs folder (read back with simulations.compare, so a table can
be regenerated from the files alone), and each claim's verdict is computed from those numbers
by the criterion the report states. `--smoke` runs every claim at toy scale (seconds) into a
temporary folder, for the test. Over the runs folder of an earlier invocation, finished runs
of the same config are reused rather than run again (`runner` says what "the same" is), so a
long reproduction can be resumed or extended.

Modules: `scale` (the sizes, full and smoke), `cooperative_sgd` and `overlap_sgd` (each
paper's claims: their configs, verdicts, tables and figures), `verdicts` (what the claims
share: the verdict rule, number and table formats), `runner` (running or reusing a
claim's configs, finding runs), `report` (the markdown), `__main__` (the command).
"""
