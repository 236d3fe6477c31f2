"""Server-side tools the model can call (SQL, documents); see DESIGN.md. Populated by the
data-sources issue."""
