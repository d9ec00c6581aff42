<?php
/* PNP4Nagios graph template for check_nova_hypervisors (nova-libvirt-checks).
 *
 * Install as share/templates/nova_hypervisors.php (service check command `nova_hypervisors`:
 * Icinga 2 or Nagios Core).
 * Perfdata labels: <resource>_used, _capacity, _free (vCPUs as counts, memory and disk in
 * bytes) and <resource>_used_pct (%) for resource vcpus, memory, disk; hypervisors,
 * hypervisors_usable, hypervisors_down, hypervisors_disabled; fits_<flavor> (instances of
 * that flavor that still fit); with --perfdata-per-hypervisor <hypervisor>.<resource>_used
 * and <hypervisor>.<resource>_used_pct.
 * check_commands/nova_hypervisors.cfg stores one RRD per label (MULTIPLE): hypervisors and
 * flavors that come and go never shift another's series. Every value is read from
 * $RRDFILE[$i] data source $DS[$i].
 * Plain PHP (5.3 and later), no PNP helper classes: tests/test_icinga.py runs it with php-cli
 * on real perfdata and draws the graphs with rrdtool.
 */
if (!is_array($def)) { $def = array(); }
if (!is_array($opt)) { $opt = array(); }
if (!is_array($ds_name)) { $ds_name = array(); }

/* resource => array(title, vertical label, GPRINT format of amounts, rrdtool base) */
$nlc_resources = array(
    'vcpus'  => array('vCPUs', 'vCPUs', '%7.1lf', 1000),
    'memory' => array('memory', 'bytes (base 1024)', '%7.2lf %sB', 1024),
    'disk'   => array('disk', 'bytes (base 1024)', '%7.2lf %sB', 1024),
);

$nlc_cloud = array();                     /* vcpus_used, ... hypervisors_down -> number */
$nlc_fits = array();                      /* flavor label -> number */
$nlc_hv = array();                        /* resource_used[_pct] -> array(hypervisor -> number) */
$nlc_other = array();
foreach ($NAME as $nlc_i => $nlc_name) {
    if (preg_match('/^(.+)\.((vcpus|memory|disk)_used(_pct)?)$/', $nlc_name, $m)) {
        $nlc_hv[$m[2]][$m[1]] = $nlc_i;
    } elseif (preg_match('/^(vcpus|memory|disk)_(used|capacity|free|used_pct)$/', $nlc_name)
              || preg_match('/^hypervisors(_usable|_down|_disabled)?$/', $nlc_name)) {
        $nlc_cloud[$nlc_name] = $nlc_i;
    } elseif (preg_match('/^fits_(.+)$/', $nlc_name, $m)) {
        $nlc_fits[$m[1]] = $nlc_i;
    } else {
        $nlc_other[$nlc_name] = $nlc_i;
    }
}
$nlc_host = isset($hostname) ? $hostname : '';

$nlc_legend_width = 20;
include(dirname(__FILE__) . '/nova_libvirt_checks.inc.php');

$nlc_n = 0;

foreach ($nlc_resources as $res => $spec) {
    /* amounts: used (area), free, capacity; free thresholds */
    $g = '';
    if (isset($nlc_cloud["{$res}_used"])) {
        $g .= $nlc_series("{$res}_used", $nlc_cloud["{$res}_used"], '#1F78B4', 'used', $spec[2], 'AREA');
    }
    if (isset($nlc_cloud["{$res}_free"])) {
        $i = $nlc_cloud["{$res}_free"];
        $g .= $nlc_series("{$res}_free", $i, '#33A02C', 'free', $spec[2]) .
            $nlc_thresholds($i, $res == 'vcpus' ? 'vCPUs' : 'B', 'free', $res == 'vcpus' ? 0 : 1024);
    }
    if (isset($nlc_cloud["{$res}_capacity"])) {
        $g .= $nlc_series("{$res}_cap", $nlc_cloud["{$res}_capacity"], '#000000', 'capacity', $spec[2], 'LINE2');
    }
    if ($g !== '') {
        $nlc_n++;
        $ds_name[$nlc_n] = $spec[0];
        $opt[$nlc_n] = "--vertical-label \"" . $spec[1] . "\" --lower-limit 0 --base " . $spec[3] .
            " --title \"" . $nlc_text($spec[0] . " of the up and enabled hypervisors, $nlc_host") . "\" ";
        $def[$nlc_n] = $g;
    }
    /* % used with the thresholds */
    if (isset($nlc_cloud["{$res}_used_pct"])) {
        $i = $nlc_cloud["{$res}_used_pct"];
        $nlc_n++;
        $ds_name[$nlc_n] = $spec[0] . ' % used';
        $opt[$nlc_n] = "--vertical-label % --lower-limit 0 --upper-limit 100 --title \"" .
            $nlc_text($spec[0] . " used (%), $nlc_host") . "\" ";
        $def[$nlc_n] = $nlc_series("{$res}_pct", $i, '#1F78B4', 'used', '%5.1lf%%', 'AREA') .
            $nlc_thresholds($i, '%');
    }
}

/* hypervisors: how many, and how many are down or disabled */
$g = '';
foreach (array('hypervisors' => array('#000000', 'selected', 'LINE2'),
               'hypervisors_usable' => array('#33A02C', 'up and enabled', 'LINE1'),
               'hypervisors_down' => array('#E31A1C', 'down', 'AREA'),
               'hypervisors_disabled' => array('#B2B2B2', 'disabled', 'AREA')) as $label => $look) {
    if (isset($nlc_cloud[$label])) {
        $i = $nlc_cloud[$label];
        $g .= $nlc_series("h_$label", $i, $look[0], $look[1], '%4.0lf', $look[2]) .
            $nlc_thresholds($i, '', $look[1]);
    }
}
if ($g !== '') {
    $nlc_n++;
    $ds_name[$nlc_n] = 'hypervisors';
    $opt[$nlc_n] = "--vertical-label hypervisors --lower-limit 0 --title \"" .
        $nlc_text("hypervisors, $nlc_host") . "\" ";
    $def[$nlc_n] = $g;
}

/* flavor room: instances that still fit, host by host */
if ($nlc_fits) {
    ksort($nlc_fits);
    $colours = $nlc_colours(array_keys($nlc_fits));
    $g = '';
    $rules = '';
    $k = 0;
    foreach ($nlc_fits as $flavor => $i) {
        $g .= $nlc_series("f$k", $i, $colours[$flavor], $flavor, '%6.0lf');
        if ($rules === '') {
            $rules = $nlc_thresholds($i, '');
        }
        $k++;
    }
    $nlc_n++;
    $ds_name[$nlc_n] = 'flavor room';
    $opt[$nlc_n] = "--vertical-label instances --lower-limit 0 --title \"" .
        $nlc_text("room for more instances by flavor, $nlc_host") . "\" ";
    $def[$nlc_n] = $g . $rules;
}

/* per hypervisor (--perfdata-per-hypervisor): % used, then amounts, a line per hypervisor */
foreach ($nlc_resources as $res => $spec) {
    foreach (array("{$res}_used_pct" => array('% used', '%', '%5.1lf%%', 1000),
                   "{$res}_used" => array('used', $spec[1], $spec[2], $spec[3])) as $key => $look) {
        if (!isset($nlc_hv[$key])) {
            continue;
        }
        $hvs = $nlc_hv[$key];
        ksort($hvs);
        $colours = $nlc_colours(array_keys($hvs));
        $g = '';
        $rules = '';
        $k = 0;
        foreach ($hvs as $hv => $i) {
            $g .= $nlc_series("p$k", $i, $colours[$hv], $hv, $look[2]);
            if ($rules === '') {
                $rules = $nlc_thresholds($i, $look[1] == '%' ? '%' : '');
            }
            $k++;
        }
        $nlc_n++;
        $ds_name[$nlc_n] = $spec[0] . ' ' . $look[0] . ' by hypervisor';
        $opt[$nlc_n] = "--vertical-label \"" . $look[1] . "\" --lower-limit 0 --base " . $look[3] .
            " --title \"" . $nlc_text($spec[0] . ' ' . $look[0] . " by hypervisor, $nlc_host") . "\" ";
        $def[$nlc_n] = $g . $rules;
    }
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
