"""Fidelity replication benchmark: real data, tokenizers and teachers trained here, the two stages run
end to end, and ``docs/fidelity.md`` generated from the results (``scripts/replicate.sh``)."""
