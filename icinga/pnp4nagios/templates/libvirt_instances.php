<?php
/* PNP4Nagios graph template for check_libvirt_instances (nova-libvirt-checks).
 *
 * Install as share/templates/libvirt_instances.php (service check command
 * `libvirt_instances`: Icinga 2 direct or agent, Nagios direct); nrpe_libvirt_instances.php
 * includes it for checks through NRPE.
 * Perfdata labels: <name>_<8 hex of uuid>.<metric> per instance, total.<metric> for the host,
 * instances, instances_warning, instances_critical. Metrics are per-second rates computed by
 * the check (B/s, ops/s, packets/s, faults/s), percentages (cpu and cpu_delay: of the
 * instance's vCPUs, their totals: of the host's CPUs; memory: used) and disk latencies (ms per
 * request, no total).
 * check_commands/libvirt_instances.cfg stores one RRD per label (MULTIPLE), so instances that
 * come and go never shift another's series; each instance keeps its colour (a hash of its
 * label). Every value is read from $RRDFILE[$i] data source $DS[$i].
 * Graphs: instance counts, host totals (CPU, disk bytes, disk ops, network bytes, packets,
 * errors and drops, CPU delay, swap, major faults), then one graph per metric with a line per
 * instance (latencies, CPU delay, swap and faults included).
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
    'disk_read_latency'  => array('disk read latency', 'ms per request', '%7.2lf ms', 'ms', 1000),
    'disk_write_latency' => array('disk write latency', 'ms per request', '%7.2lf ms', 'ms', 1000),
    'disk_flush_latency' => array('disk flush latency', 'ms per request', '%7.2lf ms', 'ms', 1000),
    'cpu_delay'        => array('CPU delay (runnable, waiting for a host CPU)', '% of its vCPUs', '%5.1lf%%', '%', 1000),
    'mem_swap_in'      => array('swap in', 'bytes/s', '%6.1lf %sB/s', 'B/s', 1000),
    'mem_swap_out'     => array('swap out', 'bytes/s', '%6.1lf %sB/s', 'B/s', 1000),
    'mem_major_faults' => array('major page faults', 'faults/s', '%6.2lf %s/s', '/s', 1000),
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
    "CPU delay of instances (% of the host's CPUs)" => array('%', '%5.1lf%%', '%',
        array('cpu_delay' => '#E31A1C')),
    'swap, all instances' => array('bytes/s', '%6.1lf %sB/s', 'B/s',
        array('mem_swap_in' => '#33A02C', 'mem_swap_out' => '#E31A1C')),
    'major page faults, all instances' => array('faults/s', '%6.2lf %s/s', '/s',
        array('mem_major_faults' => '#6A3D9A')),
);

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

include(dirname(__FILE__) . '/nova_libvirt_checks.inc.php');

$nlc_n = 0;

/* instances: how many, how many over their limits */
if ($nlc_count) {
    $g = '';
    foreach (array('instances' => array('#1F78B4', 'selected'),
                   'instances_warning' => array('#FFC000', 'warning'),
                   'instances_critical' => array('#FF0000', 'critical')) as $label => $look) {
        if (isset($nlc_count[$label])) {
            $g .= $nlc_series("c_$label", $nlc_count[$label], $look[0], $look[1], '%4.0lf',
                              $label != 'instances' ? 'SHADE' : 'LINE1');
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
            $rules = $nlc_thresholds($i, $spec[3], '', ($spec[3] == '%' || $spec[3] == 'ms') ? 0 : 1000);
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
