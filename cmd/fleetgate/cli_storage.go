package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fleetgate/fleetgate/storage"
)

const storageUsage = `usage:
  fleetgate storage check  [--data-dir DIR] [--config FILE]
  fleetgate storage repair [--data-dir DIR] [--config FILE] [--yes]

check verifies the stopped gateway's log (the MANIFEST against the table files, every block of
every table against its checksum) without changing anything; it exits 1 when it finds damage.
repair salvages a damaged log: it moves unreadable tables and the MANIFEST into
<data_dir>/log/damaged-<time>/ (nothing is deleted), writes a MANIFEST that references every
readable table, and says what was dropped. Stop the gateway and back up the data dir first.
`

// storageDir is the Badger directory inside a data dir (as startGateway opens it).
func storageDir(dataDir string) string { return filepath.Join(dataDir, "log") }

// cmdStorage runs `fleetgate storage check|repair`.
func cmdStorage(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, storageUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("fleetgate storage "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f serverFlags
	f.register(fs, false)
	var yes bool
	switch sub {
	case "check":
	case "repair":
		fs.BoolVar(&yes, "yes", false, "repair without asking first")
	default:
		fmt.Fprintf(stderr, "fleetgate storage: unknown subcommand %q\n\n%s", sub, storageUsage)
		return 2
	}
	fs.Usage = func() { fmt.Fprint(stderr, storageUsage); fs.PrintDefaults() }
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "fleetgate storage %s: unexpected argument %q\n", sub, fs.Arg(0))
		return 2
	}
	// Only data_dir matters here: the rest of the config need not be valid.
	cfg, err := f.read()
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate:", err)
		return 2
	}
	dir := storageDir(cfg.DataDir)
	if _, err := os.Stat(dir); err != nil {
		fmt.Fprintf(stderr, "fleetgate storage %s: %v (is --data-dir right?)\n", sub, err)
		return 2
	}
	if sub == "check" {
		return storageCheck(dir, stdout, stderr)
	}
	return storageRepair(dir, cfg.memoryPlan().MemTableBytes, yes, stdout, stderr)
}

func storageCheck(dir string, stdout, stderr io.Writer) int {
	r, err := storage.Check(dir)
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate storage check:", err)
		return 2
	}
	printCheck(stdout, r)
	if !r.Damaged() {
		fmt.Fprintf(stdout, "ok: no damage found (%s)\n", r.Took.Round(time.Millisecond))
		return 0
	}
	problems := fmt.Sprintf("%d problems", len(r.Problems))
	if len(r.Problems) == 1 {
		problems = "1 problem"
	}
	fmt.Fprintf(stdout, "%s. Nothing was changed. Restore the data dir from a backup, or run `fleetgate storage repair` (same --data-dir/--config) to keep what is readable.\n", problems)
	return 1
}

// printCheck prints what a check found: the MANIFEST, each table, notes and problems.
func printCheck(w io.Writer, r *storage.CheckReport) {
	fmt.Fprintf(w, "storage: %s\n", r.Dir)
	fmt.Fprintf(w, "MANIFEST: %s\n", r.Manifest)
	fmt.Fprintf(w, "tables: %d (%s); log files (.mem/.vlog): %d\n", len(r.Tables), humanBytes(r.Bytes), r.Logs)
	if len(r.Tables) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  TABLE\tLEVEL\tSIZE\tENTRIES\tSTATE")
		for _, t := range r.Tables {
			level, size, state := "-", "missing", "ok"
			if t.Level >= 0 {
				level = fmt.Sprint(t.Level)
			}
			if t.Size >= 0 {
				size = humanBytes(t.Size)
			}
			switch {
			case t.Err != nil:
				state = t.Err.Error()
			case t.Size < 0:
				state = "referenced by the MANIFEST, not on disk"
			case t.Fate == storage.TableLost:
				state = "readable, not referenced by the MANIFEST"
			case t.Fate != storage.TableLive:
				state = "readable, left over from a crash"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\n", t.File, level, size, t.Keys, state)
		}
		tw.Flush()
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	for _, p := range r.Problems {
		fmt.Fprintln(w, "DAMAGED:", p)
	}
}

func storageRepair(dir string, memtable int64, yes bool, stdout, stderr io.Writer) int {
	in := bufio.NewReader(os.Stdin)
	rep, err := storage.Repair(dir, storage.RepairOptions{MemTableBytes: memtable, Confirm: func(plan []string) bool {
		fmt.Fprintln(stdout, "plan:")
		for _, p := range plan {
			fmt.Fprintln(stdout, "  "+p)
		}
		if yes {
			return true
		}
		fmt.Fprintf(stdout, "Go ahead? Dropped files are moved into %s, nothing is deleted. [y/N] ", filepath.Join(dir, "damaged-<time>"))
		answer, _ := in.ReadString('\n')
		answer = strings.ToLower(strings.TrimSpace(answer))
		return answer == "y" || answer == "yes"
	}})
	if rep != nil && rep.Check != nil && !rep.Check.Damaged() {
		printCheck(stdout, rep.Check)
		fmt.Fprintln(stdout, "nothing to repair: no damage found")
		return 0
	}
	if rep != nil && !rep.Done && err == nil {
		fmt.Fprintln(stdout, "nothing changed")
		return 1
	}
	if rep != nil && rep.Done {
		printRepair(stdout, dir, rep)
	}
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate storage repair:", err)
		if errors.Is(err, storage.ErrDamaged) {
			fmt.Fprintln(stderr, "fleetgate storage repair: the store is still damaged; what was moved is listed above")
		}
		return 1
	}
	return 0
}

func printRepair(w io.Writer, dir string, rep *storage.RepairReport) {
	fmt.Fprintf(w, "moved into %s:\n", filepath.Join(dir, rep.Aside))
	for _, m := range rep.Moved {
		line := "  " + m.File + ": " + m.Reason
		if m.Held != "" {
			line += "; it held " + m.Held
		}
		fmt.Fprintln(w, line)
	}
	for _, f := range rep.Missing {
		fmt.Fprintf(w, "lost: %s was referenced by the MANIFEST but not on disk; its data is gone unless a backup has it\n", f)
	}
	fmt.Fprintf(w, "wrote a new MANIFEST referencing %d tables\n", rep.Kept)
	fmt.Fprintf(w, "repaired: the store opens and holds %d events, %d queue entries, %d dead letters\n", rep.Events, rep.QueueEntries, rep.DeadLetters)
	fmt.Fprintln(w, "keys a dropped table had deleted may be back: functions may receive some events again")
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
