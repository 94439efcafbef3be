"""Presentation: the live table, its one owner of the terminal, the summary and the exports."""
