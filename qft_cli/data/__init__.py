"""Tasks (genomic, GUE, CoNLL), text datasets (MMLU, random tokens), synthetic DNA."""
