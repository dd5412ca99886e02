"""`python -m asr.training <arguments of asr train>`, and under torchrun:
`torchrun --nproc-per-node N -m asr.training <arguments of asr train>` (one rank per process)."""

import sys

if __name__ == "__main__":
    # Imported here, not at the top: importing asr.training.__main__ (tests/test_imports.py) must
    # neither start training nor pull in the whole CLI.
    from ..cli import entry

    entry(["train", *sys.argv[1:]])
