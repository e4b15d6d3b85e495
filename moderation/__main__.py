from moderation.cli import app

app(prog_name="moderation")
