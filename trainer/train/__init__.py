"""Where data becomes an adapter: the pipeline config (`config`), the 4-bit base and LoRA attachment (`model`), the
chat template trained and served with (`templates`), CPU kernels (`lm_head`, `attention`), one QLoRA stage
(`stage`), the run folder it writes (`rundir`, `lineage`), and the embedded demo model (`demo_model`)."""
