"""The application: run folders end to end (:mod:`.runs`), their figures (:mod:`.figures`) and the
command line (:mod:`.cli`, argument parsing only)."""
