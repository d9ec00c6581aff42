<?php
/* PNP4Nagios graph template for check_libvirtd (nova-libvirt-checks).
 *
 * Install as share/templates/libvirtd.php (service check command `libvirtd`: Icinga 2 direct
 * or agent, Nagios direct); nrpe_libvirtd.php includes it for checks through NRPE.
 * Perfdata: time (s, with the -w/-c thresholds), domains_<state> and domains (counts).
 * check_commands/libvirtd.cfg stores one RRD per label (MULTIPLE); this template reads every
 * value from $RRDFILE[$i] data source $DS[$i], so it works with SINGLE files too.
 * Plain PHP (5.3 and later), no PNP helper classes: tests/test_icinga.py runs it with php-cli
 * on real perfdata and draws the graphs with rrdtool.
 */
if (!is_array($def)) { $def = array(); }
if (!is_array($opt)) { $opt = array(); }
if (!is_array($ds_name)) { $ds_name = array(); }

$nlc_index = array();                      /* perfdata label -> data source number */
foreach ($NAME as $nlc_i => $nlc_name) {
    $nlc_index[$nlc_name] = $nlc_i;
}
$nlc_host = isset($hostname) ? $hostname : '';

include(dirname(__FILE__) . '/nova_libvirt_checks.inc.php');

$nlc_n = 0;

/* response time */
if (isset($nlc_index['time'])) {
    $i = $nlc_index['time'];
    $nlc_n++;
    $ds_name[$nlc_n] = 'response time';
    $opt[$nlc_n] = "--vertical-label seconds --lower-limit 0 --title \"" .
        $nlc_text("libvirtd response time, $nlc_host") . "\" ";
    $def[$nlc_n] = $nlc_def('t', $i) .
        "AREA:t#8CC8FF:\"answered in\" " .
        "LINE1:t#1F78B4 " .
        "GPRINT:t:LAST:\"last %6.3lf %ss\" " .
        "GPRINT:t:AVERAGE:\"average %6.3lf %ss\" " .
        "GPRINT:t:MAX:\"max %6.3lf %ss\\n\" " .
        $nlc_thresholds($i, 's');
}

/* domains by state: stacked, with the total as a line */
$nlc_states = array('running' => '#33A02C', 'blocked' => '#FF7F00', 'paused' => '#FFD92F',
                    'shutdown' => '#A6CEE3', 'shutoff' => '#B2B2B2', 'crashed' => '#E31A1C',
                    'pmsuspended' => '#6A3D9A', 'nostate' => '#8C564B');
$nlc_graph = '';
$nlc_first = true;
foreach ($nlc_states as $state => $color) {
    if (!isset($nlc_index["domains_$state"])) {
        continue;
    }
    $i = $nlc_index["domains_$state"];
    $nlc_graph .= $nlc_def("d_$state", $i) .
        "AREA:d_$state$color:\"" . sprintf('%-12s', $state) . "\"" . ($nlc_first ? '' : ':STACK') . " " .
        "GPRINT:d_$state:LAST:\"%4.0lf\" " .
        "GPRINT:d_$state:MAX:\"max %4.0lf\\n\" " .
        $nlc_thresholds($i, '', "$state domains");
    $nlc_first = false;
}
if (isset($nlc_index['domains'])) {
    $i = $nlc_index['domains'];
    $nlc_graph .= $nlc_def('d_total', $i) .
        "LINE2:d_total#000000:\"" . sprintf('%-12s', 'total') . "\" " .
        "GPRINT:d_total:LAST:\"%4.0lf\" " .
        "GPRINT:d_total:MAX:\"max %4.0lf\\n\" " .
        $nlc_thresholds($i, '', 'domains');
}
if ($nlc_graph !== '') {
    $nlc_n++;
    $ds_name[$nlc_n] = 'domains';
    $opt[$nlc_n] = "--vertical-label domains --lower-limit 0 --title \"" .
        $nlc_text("libvirt domains by state, $nlc_host") . "\" ";
    $def[$nlc_n] = $nlc_graph;
}
