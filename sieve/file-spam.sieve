# Mailward global Sieve script: file spam and quarantined mail into Junk.
#
# Install it as Dovecot's `sieve_before` script, so that it runs for every delivery,
# before the user's own script:
#
#   plugin {
#     sieve_before = /etc/dovecot/sieve/file-spam.sieve
#   }
#
# and compile it with `sievec` whenever it changes: LMTP runs as the mail user and
# cannot write the compiled binary next to a root-owned script.
#
# The headers are set by the Mailward milter:
#   X-Spam-Flag: YES            the spam score reached the "spam" threshold
#                               (the same header SpamAssassin and Rspamd write,
#                               so existing scripts and Dovecot's spamtest read it);
#   X-Mailward-Quarantine: yes (why)
#                               DMARC (or another check) asked for quarantine and
#                               `[dmarc] quarantine = "header"` is configured; the
#                               comment after "yes" says which policy asked.
# A sender who forges either header only moves its own message into the recipient's
# Junk folder, so trusting them here gives a sender nothing.
#
# `stop` ends Sieve processing for the message: a user script must not file it back
# into INBOX or forward it. Messages that do not match fall through to the user script
# (or to INBOX when there is none).

require ["fileinto", "mailbox"];

# Spam by score.  `:is` compares case-insensitively (i;ascii-casemap), so "Yes" and
# "yes" match too.
if header :is "X-Spam-Flag" "YES" {
    # :create makes the folder on first use: new mailboxes have no Junk yet.
    fileinto :create "Junk";
    stop;
}

# Quarantined by policy (for example DMARC p=quarantine): "yes", maybe with a reason.
if anyof (header :is "X-Mailward-Quarantine" "yes",
          header :matches "X-Mailward-Quarantine" "yes *") {
    fileinto :create "Junk";
    stop;
}
