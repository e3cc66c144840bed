"""Projects written as a user of the lab would write them, to prove the lab assumes nothing of its own app."""
