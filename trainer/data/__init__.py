"""Where data enters: any input schema read into chat `messages` and validated (`conversations`, `readers`),
near-duplicates (`near_dup`), the answer language (`language`), rows shared between sets (`contamination`), grounded
synthetic generation (`synth`), and the app's feedback store and its export into stage-2 data (`feedback`,
`export`)."""
