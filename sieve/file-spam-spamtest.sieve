# Mailward global Sieve script, by score: file mail into Junk when Dovecot's `spamtest`
# (RFC 5235) rates it 5 or more on its 1..10 scale, computed from our X-Spam-Score.
#
# A variant of file-spam.sieve for admins who want their own cut-off instead of
# Mailward's "spam" action threshold.  It needs Dovecot's spamtest settings, which map
# X-Spam-Score onto the scale (see deploy/dovecot/: sieve_spamtest_status_type = score,
# sieve_spamtest_status_header = X-Spam-Score, sieve_spamtest_max_value = the score
# that counts as certain spam).  Install as `sieve_before`, compile with `sievec`.
# With the shipped sieve_spamtest_max_value = 15, spamtest 5 means a score of about 6.7
# or more (Dovecot maps score 0..max onto 1..10); change 5 here, or the maximum there.
#
# spamtest says 0 when the header is missing (mail not scored): it is left alone.
require ["spamtest", "fileinto", "mailbox", "relational", "comparator-i;ascii-numeric"];

if spamtest :value "ge" :comparator "i;ascii-numeric" "5" {
    fileinto :create "Junk";
    stop;
}

# Quarantined by policy (for example DMARC p=quarantine), as in file-spam.sieve.
if anyof (header :is "X-Mailward-Quarantine" "yes",
          header :matches "X-Mailward-Quarantine" "yes *") {
    fileinto :create "Junk";
    stop;
}
