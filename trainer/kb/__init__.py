"""The knowledge base: its types (`schema`), the loaded and indexed KB (`knowledge_base`, `names`, `caseless`), the
loader of `data/kb/*.yaml` (`loader`), retrieval for grounded answers (`retrieve`), and the checks that rest on it:
the audit of conversations (`audit`, `claims`) and false premises in questions (`premise`)."""
