"""Development tools, never imported by the product: `make run`'s stack (`devstack`), the mail
catcher, the Temporal dev server's flags (`temporal_dev`) and the SpamAssassin check."""
