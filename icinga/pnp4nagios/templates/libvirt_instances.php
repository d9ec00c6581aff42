<?php
/* PNP4Nagios graph template for check_libvirt_instances (nova-libvirt-checks).
 *
 * Install as share/templates/libvirt_instances.php (service check command
 * `libvirt_instances`: Icinga 2 direct or agent, Nagios direct); nrpe_libvirt_instances.php
 * includes it for checks through NRPE.
 * Perfdata labels: <name>_<8 hex of uuid>.<metric> per instance, total.<metric> for the host,
 * instances, instances_warning, instances_critical. Metrics are per-second rates computed by
 * the check (B/s, ops/s, packets/s) and percentages (cpu: of the instance's vCPUs, total.cpu:
 * of the host's CPUs; memory: used).
 * check_commands/libvirt_instances.cfg stores one RRD per label (MULTIPLE), so instances that
 * come and go never shift another's series; each instance keeps its colour (a hash of its
 * label). Every value is read from $RRDFILE[$i] data source $DS[$i].
 * Graphs: instance counts, host totals (CPU, disk bytes, disk ops, network bytes, packets,
 * errors and drops), then one graph per metric with a line per instance.
 * Plain PHP (5.3 and later), no PNP helper classes: tests/test_icinga.py runs it with php-cli
 * on real perfdata and draws the graphs with rrdtool.
 */
if (!is_array($def)) { $def = array(); }
if (!is_array($opt)) { $opt = array(); }
if (!is_array($ds_name)) { $ds_name = array(); }

/* metric => array(title, vertical label, GPRINT format, unit shown with thresholds, rrdtool base) */
$nlc_metrics = array(
    'cpu'              => array('CPU', '% of its vCPUs', '%5.1lf%%', '%', 1000),
    'memory'           => array('memory used', '%', '%5.1lf%%', '%', 1000),
    'disk_read_bytes'  => array('disk read', 'bytes/s', '%6.1lf %sB/s', 'B/s', 1000),
    'disk_write_bytes' => array('disk write', 'bytes/s', '%6.1lf %sB/s', 'B/s', 1000),
    'disk_read_ops'    => array('disk read operations', 'operations/s', '%6.1lf %s/s', '/s', 1000),
    'disk_write_ops'   => array('disk write operations', 'operations/s', '%6.1lf %s/s', '/s', 1000),
    'net_rx_bytes'     => array('network received', 'bytes/s', '%6.1lf %sB/s', 'B/s', 1000),
    'net_tx_bytes'     => array('network sent', 'bytes/s', '%6.1lf %sB/s', 'B/s', 1000),
    'net_rx_packets'   => array('packets received', 'packets/s', '%6.1lf %s/s', '/s', 1000),
    'net_tx_packets'   => array('packets sent', 'packets/s', '%6.1lf %s/s', '/s', 1000),
    'net_errors'       => array('network errors', 'errors/s', '%6.2lf %s/s', '/s', 1000),
    'net_drops'        => array('network drops', 'drops/s', '%6.2lf %s/s', '/s', 1000),
);
/* host total graphs: title => array(vertical label, GPRINT format, unit, metric => colour) */
$nlc_total_graphs = array(
    "CPU used by instances (% of the host's CPUs)" => array('%', '%5.1lf%%', '%',
        array('cpu' => '#1F78B4')),
    'disk bytes, all instances' => array('bytes/s', '%6.1lf %sB/s', 'B/s',
        array('disk_read_bytes' => '#33A02C', 'disk_write_bytes' => '#E31A1C')),
    'disk operations, all instances' => array('operations/s', '%6.1lf %s/s', '/s',
        array('disk_read_ops' => '#33A02C', 'disk_write_ops' => '#E31A1C')),
    'network bytes, all instances' => array('bytes/s', '%6.1lf %sB/s', 'B/s',
        array('net_rx_bytes' => '#1F78B4', 'net_tx_bytes' => '#FF7F00')),
    'network packets, all instances' => array('packets/s', '%6.1lf %s/s', '/s',
        array('net_rx_packets' => '#1F78B4', 'net_tx_packets' => '#FF7F00')),
    'network errors and drops, all instances' => array('per second', '%6.2lf %s/s', '/s',
        array('net_errors' => '#E31A1C', 'net_drops' => '#6A3D9A')),
);
$nlc_palette = array('#1F78B4', '#33A02C', '#E31A1C', '#FF7F00', '#6A3D9A', '#B15928',
                     '#A6CEE3', '#B2DF8A', '#FB9A99', '#FDBF6F', '#CAB2D6', '#8C564B',
                     '#E377C2', '#17BECF', '#BCBD22', '#7F7F7F');

/* sort the labels: totals, counts, per-instance; anything else is drawn as "other" */
$nlc_total = array();                      /* metric -> data source number */
$nlc_count = array();                      /* instances, instances_warning, ... -> number */
$nlc_inst = array();                       /* metric -> array(instance label base -> number) */
$nlc_other = array();
foreach ($NAME as $nlc_i => $nlc_name) {
    if (preg_match('/^total\.([a-z_]+)$/', $nlc_name, $m) && isset($nlc_metrics[$m[1]])) {
        $nlc_total[$m[1]] = $nlc_i;
    } elseif (preg_match('/^instances(_warning|_critical)?$/', $nlc_name)) {
        $nlc_count[$nlc_name] = $nlc_i;
    } elseif (preg_match('/^(.+)\.([a-z_]+)$/', $nlc_name, $m) && isset($nlc_metrics[$m[2]])) {
        $nlc_inst[$m[2]][$m[1]] = $nlc_i;
    } else {
        $nlc_other[$nlc_name] = $nlc_i;
    }
}
$nlc_host = isset($hostname) ? $hostname : '';

$nlc_text = function ($text) {
    return str_replace(array('"', ':'), array("'", '\:'), $text);
};
$nlc_def = function ($vname, $i) use (&$RRDFILE, &$DS) {
    return "DEF:$vname=" . $RRDFILE[$i] . ":" . $DS[$i] . ":AVERAGE ";
};
/* a colour per label, the same from run to run: its hash picks a palette slot; in sorted
   order, a label whose slot is taken moves to the next free one */
$nlc_colours = function ($labels) use ($nlc_palette) {
    $labels = array_values($labels);
    sort($labels, SORT_STRING);
    $n = count($nlc_palette);
    $taken = array();
    $out = array();
    foreach ($labels as $label) {
        if (count($taken) >= $n) {
            $taken = array();
        }
        $slot = abs(crc32($label)) % $n;
        while (isset($taken[$slot])) {
            $slot = ($slot + 1) % $n;
        }
        $taken[$slot] = true;
        $out[$label] = $nlc_palette[$slot];
    }
    return $out;
};
/* a threshold for people: (100000000, 1000, 'B/s') -> "100 MB/s",
   (68719476736, 1024, 'B') -> "64 GiB", (90, 0, '%') -> "90%" */
$nlc_amount = function ($value, $base, $unit) {
    $v = (float) $value;
    $prefixes = array('', 'k', 'M', 'G', 'T', 'P');
    $p = 0;
    while ($base && abs($v) >= $base && $p < 5) {
        $v /= $base;
        $p++;
    }
    $text = rtrim(rtrim(sprintf('%.2f', $v), '0'), '.');
    $prefix = $p ? $prefixes[$p] . ($base == 1024 ? 'i' : '') : '';
    $glue = ($prefix === '' && ($unit === '' || $unit[0] == '%' || $unit[0] == '/')) ? '' : ' ';
    return $text . $glue . $prefix . $unit;
};
/* HRULEs at the warning and critical thresholds of data source $i: a plain value or the
   upper bound of a range alerts above, the lower bound below; an inside (@) range between */
$nlc_thresholds = function ($i, $unit, $what = '', $base = 0) use (&$WARN, &$WARN_MIN, &$WARN_MAX, &$WARN_RANGE_TYPE, &$CRIT, &$CRIT_MIN, &$CRIT_MAX, &$CRIT_RANGE_TYPE, $nlc_amount) {
    $out = '';
    foreach (array(array('warning', '#FFC000', $WARN, $WARN_MIN, $WARN_MAX, $WARN_RANGE_TYPE),
                   array('critical', '#FF0000', $CRIT, $CRIT_MIN, $CRIT_MAX, $CRIT_RANGE_TYPE)) as $t) {
        $inside = is_array($t[5]) && isset($t[5][$i]) && $t[5][$i] == 'inside';
        foreach (array(array($t[2], 'above'), array($t[3], $inside ? 'from' : 'below'),
                       array($t[4], $inside ? 'to' : 'above')) as $bound) {
            $source = $bound[0];
            if (is_array($source) && isset($source[$i]) && is_numeric($source[$i])) {
                $shown = str_replace(':', '\:', $nlc_amount($source[$i], $base, $unit));
                $out .= "HRULE:" . $source[$i] . $t[1] . ":\"" . trim("$what " . $t[0]) . " " .
                    $bound[1] . " $shown\\n\" ";
            }
        }
    }
    return $out;
};
/* one value: a line (or area) with last, average and max */
$nlc_series = function ($vname, $i, $colour, $legend, $format, $area = false) use ($nlc_def, $nlc_text) {
    $legend = $nlc_text(sprintf('%-24s', $legend));
    return $nlc_def($vname, $i) .
        ($area ? "AREA:$vname$colour" . "40 " : '') .
        "LINE1:$vname$colour:\"$legend\" " .
        "GPRINT:$vname:LAST:\"last $format\" " .
        "GPRINT:$vname:AVERAGE:\"avg $format\" " .
        "GPRINT:$vname:MAX:\"max $format\\n\" ";
};

$nlc_n = 0;

/* instances: how many, how many over their limits */
if ($nlc_count) {
    $g = '';
    foreach (array('instances' => array('#1F78B4', 'selected'),
                   'instances_warning' => array('#FFC000', 'warning'),
                   'instances_critical' => array('#FF0000', 'critical')) as $label => $look) {
        if (isset($nlc_count[$label])) {
            $g .= $nlc_series("c_$label", $nlc_count[$label], $look[0], $look[1], '%4.0lf',
                              $label != 'instances');
        }
    }
    $nlc_n++;
    $ds_name[$nlc_n] = 'instances';
    $opt[$nlc_n] = "--vertical-label instances --lower-limit 0 --title \"" .
        $nlc_text("instances, $nlc_host") . "\" ";
    $def[$nlc_n] = $g;
}

/* host totals */
foreach ($nlc_total_graphs as $title => $graph) {
    $g = '';
    foreach ($graph[3] as $metric => $colour) {
        if (isset($nlc_total[$metric])) {
            $i = $nlc_total[$metric];
            $g .= $nlc_series("t_$metric", $i, $colour, $nlc_metrics[$metric][0], $graph[1]) .
                $nlc_thresholds($i, $graph[2], $metric == 'cpu' ? '' : $nlc_metrics[$metric][0],
                                $graph[2] == '%' ? 0 : 1000);
        }
    }
    if ($g === '') {
        continue;
    }
    $nlc_n++;
    $ds_name[$nlc_n] = "total: $title";
    $opt[$nlc_n] = "--vertical-label \"" . $graph[0] . "\" --lower-limit 0 --base 1000 --title \"" .
        $nlc_text("$title, $nlc_host") . "\" ";
    $def[$nlc_n] = $g;
}

/* per metric, a line per instance (instances sorted by label) */
foreach ($nlc_metrics as $metric => $spec) {
    if (!isset($nlc_inst[$metric])) {
        continue;
    }
    $instances = $nlc_inst[$metric];
    ksort($instances);
    $colours = $nlc_colours(array_keys($instances));
    $g = '';
    $rules = '';
    $k = 0;
    foreach ($instances as $label => $i) {
        $g .= $nlc_series("i$k", $i, $colours[$label], $label, $spec[2]);
        if ($rules === '') {
            /* -w/-c are the same for every instance */
            $rules = $nlc_thresholds($i, $spec[3], '', $spec[3] == '%' ? 0 : 1000);
        }
        $k++;
    }
    $nlc_n++;
    $ds_name[$nlc_n] = "by instance: " . $spec[0];
    $opt[$nlc_n] = "--vertical-label \"" . $spec[1] . "\" --lower-limit 0 --base " . $spec[4] .
        " --title \"" . $nlc_text($spec[0] . " by instance, $nlc_host") . "\" ";
    $def[$nlc_n] = $g . $rules;
}

/* anything this template does not know (a newer check): still drawn */
if ($nlc_other) {
    $colours = $nlc_colours(array_keys($nlc_other));
    $g = '';
    $k = 0;
    foreach ($nlc_other as $label => $i) {
        $g .= $nlc_series("o$k", $i, $colours[$label], $label, '%6.2lf %s');
        $k++;
    }
    $nlc_n++;
    $ds_name[$nlc_n] = 'other values';
    $opt[$nlc_n] = "--title \"" . $nlc_text("other values, $nlc_host") . "\" ";
    $def[$nlc_n] = $g;
}
