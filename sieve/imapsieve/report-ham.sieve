# IMAPSieve: a message moved out of Junk is ham, except when it goes to Trash
# (deleting spam is not a statement that it was wanted).  Teach Mailward.
#
# Run for COPY/MOVE into any mailbox whose source is Junk (imapsieve_mailboxN_from =
# Junk, see deploy/dovecot/).  Learning a message as ham that was learned as spam moves
# it (the spam learning is undone), so a mistaken move into Junk is corrected by moving
# it back.
#
# `imapsieve` is required for the `imap.mailbox` environment item (without it the Trash
# test never matches); it also means `sieve-test` cannot run this script, only `sievec`
# compiles it: tests/integration/test_imapsieve.py checks it through real Dovecot.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.mailbox" "*" {
    set "mailbox" "${1}";
}

if string "${mailbox}" "Trash" {
    stop;
}

pipe :copy :try "mailward-learn" ["ham"];
