"""Contacts: who they are (`directory`), what they agreed to (`consent`), who may not be emailed
(`suppression`) and which addresses are refused at the door (`hygiene`)."""
