# IMAPSieve: a message moved out of Junk is ham, except when it goes to Trash
# (deleting spam is not a statement that it was wanted).  Teach Mailward.
#
# Run for COPY/MOVE into any mailbox whose source is Junk (imapsieve_mailboxN_from =
# Junk, see deploy/dovecot/).  Learning a message as ham that was learned as spam moves
# it (the spam learning is undone), so a mistaken move into Junk is corrected by moving
# it back.
#
# No `require "imapsieve"`: nothing here needs it (imap.mailbox comes with the
# environment extension in IMAP), and without it `sieve-test` can check the script too.
require ["vnd.dovecot.pipe", "copy", "environment", "variables"];

if environment :matches "imap.mailbox" "*" {
    set "mailbox" "${1}";
}

if string "${mailbox}" "Trash" {
    stop;
}

pipe :copy :try "mailward-learn" ["ham"];
