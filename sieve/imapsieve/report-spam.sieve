# IMAPSieve: a message moved (or copied, or appended) into Junk is spam; teach Mailward.
#
# Run by Dovecot's imap_sieve plugin for COPY/MOVE/APPEND into the Junk mailbox (see
# deploy/dovecot/).  The pipe program only spools the message and returns at once; the
# learner service learns it.  `:try`: a full spool must not fail the user's MOVE.
#
# No `require "imapsieve"`: nothing here needs it (imap.mailbox comes with the
# environment extension in IMAP), and without it `sieve-test` can check the script too.
require ["vnd.dovecot.pipe", "copy"];

pipe :copy :try "mailward-learn" ["spam"];
