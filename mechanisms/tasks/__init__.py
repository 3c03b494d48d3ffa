"""The paper's three tasks: their specs (prompt, teacher-forced answer, scored tokens, scorer), batched
generation under token edits, and the model under test that asks and caches them."""
