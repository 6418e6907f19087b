"""Mail: rendering (`render`), the one template context builder (`context`), MIME and SMTP
delivery (`smtp`; its faults recorded for `/healthz` by `health`), the signed links in an email
(`links`), open and click tracking (`tracking`), the message log (`messages`), the double opt-in
email (`confirmation`) and provider feedback (`feedback`)."""
