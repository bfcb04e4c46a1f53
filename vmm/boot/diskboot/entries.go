package diskboot

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
)

// An entry is one way to boot that a loader configuration describes: the
// paths of a kernel and initrds on the filesystem the configuration was
// found on, and the kernel's command line.
type entry struct {
	title   string
	id      string // grub's --id, a BLS file's name, an extlinux label
	kernel  string
	initrds []string
	cmdline string
}

// choose picks the entry want names (a title, an id, or an index), or the
// default one.
func choose(entries []entry, def int, want string) (entry, error) {
	if len(entries) == 0 {
		return entry{}, errNoEntry
	}
	if want == "" {
		if def < 0 || def >= len(entries) {
			def = 0
		}
		return entries[def], nil
	}
	for _, e := range entries {
		if e.title == want || (e.id != "" && e.id == want) {
			return e, nil
		}
	}
	if i, err := strconv.Atoi(want); err == nil && i >= 0 && i < len(entries) {
		return entries[i], nil
	}
	var names []string
	for _, e := range entries {
		names = append(names, strconv.Quote(e.title))
	}
	return entry{}, fmt.Errorf("no entry %q (entries: %s)", want, strings.Join(names, ", "))
}

// grubCfg reads the menu entries of a grub.cfg as Debian's and Ubuntu's
// update-grub write it: `menuentry 'title' ... $menuentry_id_option 'x' {
// linux /path args; initrd /path ... }`, one level of submenus, and `set
// default=` as grub reads it: an index, a title or an id, or a path
// "submenu>entry" of those; "${saved_entry}" is the one env (the grubenv
// beside grub.cfg, as grub-set-default writes it) holds. Everything else
// (search, insmod, if blocks) is ignored: the paths are taken relative to
// the filesystem the file is on, which is where grub's `search` finds
// them on those distributions. Entries are returned in the file's order.
func grubCfg(text string, env map[string]string) ([]entry, int) {
	type item struct {
		entry
		at     int   // index in its menu
		parent *item // the submenu it is in, if any
	}
	var items []item
	var cur *item
	var sub *item      // the submenu being read (opened at the top level only)
	top, inSub := 0, 0 // next index in the top menu, in the submenu
	def := ""
	depth := 0
	for _, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		words := shellWords(line)
		if len(words) == 0 {
			continue
		}
		switch {
		case words[0] == "set" && len(words) > 1 && strings.HasPrefix(words[1], "default="):
			if depth == 0 {
				def = strings.TrimPrefix(words[1], "default=")
			}
		case (words[0] == "menuentry" || words[0] == "submenu") && len(words) > 1:
			e := entry{title: words[1]}
			for i, w := range words {
				// update-grub writes $menuentry_id_option, which
				// grub's header sets to --id.
				if (w == "--id" || w == "$menuentry_id_option") && i+1 < len(words) {
					e.id = words[i+1]
				}
			}
			if words[0] == "submenu" {
				if sub == nil && depth == 0 {
					sub, inSub = &item{entry: e, at: top}, 0
					top++
				}
				break
			}
			it := item{entry: e, at: top}
			if sub != nil {
				it.at, it.parent = inSub, sub
				inSub++
			} else {
				top++
			}
			items = append(items, it)
			cur = &items[len(items)-1]
		case cur != nil && (words[0] == "linux" || words[0] == "linux16" || words[0] == "linuxefi") && len(words) > 1:
			cur.kernel = words[1]
			cur.cmdline = strings.Join(words[2:], " ")
		case cur != nil && (words[0] == "initrd" || words[0] == "initrd16" || words[0] == "initrdefi"):
			cur.initrds = append(cur.initrds, words[1:]...)
		}
		// Braces close menu entries and submenus (and if blocks).
		depth += strings.Count(line, "{") - strings.Count(line, "}")
		if strings.HasSuffix(line, "}") && cur != nil && words[0] != "menuentry" {
			cur = nil
		}
		if sub != nil && depth <= 0 && strings.Contains(line, "}") {
			sub = nil
		}
	}
	if v, ok := strings.CutPrefix(def, "${"); ok && strings.HasSuffix(v, "}") {
		def = env[strings.TrimSuffix(v, "}")]
	} else if v, ok := strings.CutPrefix(def, "$"); ok {
		def = env[v]
	}
	is := func(name string, it *item) bool {
		return name == strconv.Itoa(it.at) || name != "" && (name == it.title || name == it.id)
	}
	var usable []entry
	d := -1
	for _, it := range items {
		if it.kernel == "" {
			continue
		}
		var ok bool
		if p, name, nested := strings.Cut(def, ">"); nested {
			ok = it.parent != nil && is(p, it.parent) && is(name, &it)
		} else {
			// A submenu as the default: grub opens it and boots
			// its first entry.
			ok = it.parent == nil && is(def, &it) ||
				it.parent != nil && it.at == 0 && is(def, it.parent)
		}
		if ok && d < 0 {
			d = len(usable)
		}
		usable = append(usable, it.entry)
	}
	if d < 0 {
		d = 0 // no default, or one naming what is not an entry: grub's first
	}
	return usable, d
}

// grubEnv reads a grub environment block (grubenv): "key=value" lines
// after a comment, padded with '#' to 1 KiB; a backslash escapes.
func grubEnv(text string) map[string]string {
	env := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		var b strings.Builder
		for i := 0; i < len(v); i++ {
			if v[i] == '\\' && i+1 < len(v) {
				i++
			}
			b.WriteByte(v[i])
		}
		env[k] = b.String()
	}
	return env
}

// blsEntry reads one Boot Loader Specification entry file
// (/loader/entries/<id>.conf): `key value` lines.
func blsEntry(id, text string) entry {
	e := entry{id: id, title: id}
	var version string
	for _, line := range strings.Split(text, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), " ")
		v = strings.TrimSpace(v)
		switch k {
		case "title":
			e.title = v
		case "version":
			version = v
		case "linux":
			e.kernel = v
		case "initrd":
			e.initrds = append(e.initrds, strings.Fields(v)...)
		case "options":
			e.cmdline = strings.TrimSpace(e.cmdline + " " + v)
		}
	}
	if version != "" && e.title == id {
		e.title = id + " (" + version + ")"
	}
	return e
}

// blsOrder sorts entries as systemd-boot shows them: newest (highest
// version in the file name) first.
func blsOrder(entries []entry) {
	slices.SortFunc(entries, func(a, b entry) int { return -compareVersions(a.id, b.id) })
}

// blsDefault is the index of the entry a loader.conf's `default` glob
// names, matched against entry ids with and without ".conf" as
// systemd-boot does; 0 when it names none, or names what only the
// firmware knows (@saved, an EFI variable).
func blsDefault(entries []entry, loaderConf string) int {
	pattern := ""
	for _, line := range strings.Split(loaderConf, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), " ")
		if k == "default" {
			pattern = strings.TrimSpace(v)
		}
	}
	if pattern == "" || strings.HasPrefix(pattern, "@") {
		return 0
	}
	for i, e := range entries {
		for _, name := range []string{e.id, e.id + ".conf"} {
			if ok, err := path.Match(pattern, name); err == nil && ok {
				return i
			}
		}
	}
	return 0
}

// compareVersions compares two names the way version sorting does: runs of
// digits as numbers, the rest as text.
func compareVersions(a, b string) int {
	for a != "" && b != "" {
		da, ra := digitsPrefix(a)
		db, rb := digitsPrefix(b)
		if da != "" && db != "" {
			na, _ := strconv.ParseUint(da, 10, 64)
			nb, _ := strconv.ParseUint(db, 10, 64)
			if na != nb {
				if na < nb {
					return -1
				}
				return 1
			}
			a, b = ra, rb
			continue
		}
		if a[0] != b[0] {
			if a[0] < b[0] {
				return -1
			}
			return 1
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func digitsPrefix(s string) (string, string) {
	i := 0
	for i < len(s) && i < 18 && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i], s[i:]
}

// extlinuxConf reads an extlinux.conf (syslinux syntax, as u-boot's
// distro boot and some images use): LABEL blocks with KERNEL or LINUX,
// INITRD (comma-separated) and APPEND; DEFAULT names the label. Paths
// relative to the file's directory are made absolute.
func extlinuxConf(dir, text string) ([]entry, int) {
	var entries []entry
	def := ""
	abs := func(p string) string {
		if strings.HasPrefix(p, "/") {
			return p
		}
		return path.Join(dir, p)
	}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		k, rest := strings.ToUpper(f[0]), strings.Join(f[1:], " ")
		switch {
		case k == "DEFAULT":
			def = rest
		case k == "LABEL":
			entries = append(entries, entry{title: rest, id: rest})
		case len(entries) == 0:
		case k == "MENU" && len(f) > 2 && strings.EqualFold(f[1], "LABEL"):
			entries[len(entries)-1].title = strings.Join(f[2:], " ")
		case k == "KERNEL" || k == "LINUX":
			entries[len(entries)-1].kernel = abs(rest)
		case k == "INITRD":
			for _, p := range strings.Split(rest, ",") {
				entries[len(entries)-1].initrds = append(entries[len(entries)-1].initrds, abs(strings.TrimSpace(p)))
			}
		case k == "APPEND":
			entries[len(entries)-1].cmdline = rest
		}
	}
	var usable []entry
	d := 0
	for _, e := range entries {
		if e.kernel == "" {
			continue
		}
		if e.id == def {
			d = len(usable)
		}
		usable = append(usable, e)
	}
	return usable, d
}

// shellWords splits a grub.cfg line into words: single and double quotes
// group, a backslash escapes the next character.
func shellWords(line string) []string {
	var words []string
	var cur strings.Builder
	in := false
	var quote byte
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '\'' || c == '"'):
			quote, in = c, true
		case c == '\\' && quote != '\'' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
			in = true
		case quote == 0 && (c == ' ' || c == '\t'):
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	return words
}
