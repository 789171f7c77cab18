Feature: commctl
  The command line client drives the server as an operator does: a
  configuration file with the endpoints and the user, readable tables or
  JSON, the server's own error messages, exit status 0 on success, 1 when the
  server refused or could not be reached, 2 for a usage error.

  Scenario: Records are created, shown and deleted through commctl
    When I run commctl "network create -t flannel_server -O address=10.0.0.1:8080 $net"
    Then commctl succeeds
    And commctl prints "$net"
    When I run commctl "container_manager create -t trivial $cm"
    Then commctl succeeds
    When I run commctl "cluster create -c $cm -n $net $cluster"
    Then commctl succeeds
    When I run commctl "cluster list"
    Then commctl prints "$cluster"
    When I run commctl "cluster get $cluster -o json"
    Then commctl's JSON output has "$cm" at "/container_manager"
    And commctl's JSON output has "$net" at "/network"
    When I run commctl "network get $net -o yaml"
    Then commctl prints "type: flannel_server"
    When I run commctl "cluster delete $cluster"
    Then commctl succeeds
    And commctl prints "Deleted cluster $cluster"
    When I run commctl "container_manager delete $cm"
    Then commctl succeeds
    When I run commctl "network delete $net"
    Then commctl succeeds
    When I run commctl "cluster list"
    Then commctl does not print "$cluster"

  Scenario: The server's refusal is shown and exits 1
    When I run commctl "cluster get $missing"
    Then commctl exits with 1
    And commctl's errors mention "$missing"
    And commctl's errors mention "HTTP 404"
    When I run commctl "cluster create -c $nomanager $cluster"
    Then commctl exits with 1
    And commctl's errors mention "HTTP 409"

  Scenario: Usage errors exit 2 and send nothing
    When I run commctl "cluster create bad/name"
    Then commctl exits with 2
    When I run commctl "cluster frobnicate $cluster"
    Then commctl exits with 2
    When I run commctl "container_manager create -O [1] $cm"
    Then commctl exits with 2
    And commctl's errors mention "not a JSON object"
    When I run commctl "container_manager list"
    Then commctl does not print "$cm"

  Scenario: Wrong credentials are the server's refusal
    Given I am "admin" with the password "not-the-password"
    When I run commctl "cluster list"
    Then commctl exits with 1
    And commctl's errors mention "HTTP 401"

  Scenario: With the first endpoint down, commands succeed on the second
    When I run commctl "cluster create $cluster" with its first endpoint down
    Then commctl succeeds
    And commctl's errors mention "Retrying with"
    When I run commctl "cluster get $cluster -o json" with its first endpoint down
    Then commctl succeeds
    And commctl's JSON output has "$cluster" at "/name"

  Scenario: With every endpoint down, commctl names them and exits 1
    When I run commctl "cluster list" with every endpoint down
    Then commctl exits with 1
    And commctl's errors mention "no server could be reached"

  @hosts
  Scenario: The walkthrough through commctl only
    Given a test host $h1
    And a test host $h2
    When I run commctl "container_manager create --type trivial $cm"
    Then commctl succeeds
    When I run commctl "cluster create --container-manager $cm $cluster"
    Then commctl succeeds
    When I run commctl "host create --cluster $cluster $h1 $TEST_KEY_FILE"
    Then commctl succeeds
    When I run commctl "host create --cluster $cluster $h2 $TEST_KEY_FILE"
    Then commctl succeeds
    Then within 120 seconds commctl "host get $h1 -o json" has "active" at "/status"
    And within 120 seconds commctl "host get $h2 -o json" has "active" at "/status"
    When I run commctl "host list $cluster"
    Then commctl prints "$h1"
    And commctl prints "$h2"
    When I run commctl "host status $h1 -o json"
    Then commctl's JSON output has "active" at "/host/status"
    When I run commctl "cluster get $cluster -o json"
    Then commctl's JSON output has 2 at "/hosts/available"
    When I run commctl "cluster restart start $cluster --batch 1 --watch"
    Then commctl succeeds
    And commctl prints "restart of cluster $cluster: finished"
    And commctl prints "done 2, in process 0, failed 0, pending 0"
    When I run commctl "cluster restart status $cluster -o json"
    Then commctl's JSON output has "finished" at "/status"
    And commctl's JSON output has ["$h1", "$h2"] at "/restarted"
    When I run commctl "host unjoin $h2 $cluster"
    Then commctl succeeds
    When I run commctl "host delete $h1 $h2"
    Then commctl succeeds
    When I run commctl "cluster delete $cluster"
    Then commctl succeeds
    When I run commctl "container_manager delete $cm"
    Then commctl succeeds
    When I run commctl "host list"
    Then commctl does not print "$h1"

  @hosts
  Scenario: An operation paused and resumed through commctl, then followed to its end
    Given a test host $h1
    And a test host $h2
    When I run commctl "cluster create $cluster"
    Then commctl succeeds
    When I run commctl "host create --cluster $cluster $h1 $TEST_KEY_FILE"
    And I run commctl "host create --cluster $cluster $h2 $TEST_KEY_FILE"
    Then within 120 seconds commctl "host get $h1 -o json" has "disassociated" at "/status"
    And within 120 seconds commctl "host get $h2 -o json" has "disassociated" at "/status"
    When I run commctl "cluster restart start $cluster"
    Then commctl succeeds
    When I run commctl "cluster restart pause $cluster -o json"
    Then commctl succeeds
    And commctl's JSON output has "pause" at "/control"
    When I run commctl "cluster restart resume $cluster -o json"
    Then commctl succeeds
    And commctl's JSON output has "" at "/control"
    When I run commctl "cluster restart status $cluster --watch"
    Then commctl succeeds
    And commctl prints "restart of cluster $cluster: finished"
    When I run commctl "cluster restart abort $cluster"
    Then commctl exits with 1
    And commctl's errors mention "HTTP 409"

  @hosts
  Scenario: A restart failed by a host that is down, retried through commctl once it is back
    Given a test host $h1
    And a test host $h2
    When I run commctl "cluster create $cluster"
    And I run commctl "host create --cluster $cluster $h1 $TEST_KEY_FILE"
    And I run commctl "host create --cluster $cluster $h2 $TEST_KEY_FILE"
    Then within 120 seconds commctl "host get $h1 -o json" has "disassociated" at "/status"
    And within 120 seconds commctl "host get $h2 -o json" has "disassociated" at "/status"
    When the test host $h2 goes down
    And I run commctl "cluster restart start $cluster --host-timeout-seconds 45 --watch"
    Then commctl exits with 1
    And commctl prints "restart of cluster $cluster: failed"
    And commctl prints "done 1, in process 0, failed 1, pending 0"
    And commctl's errors mention "$h2"
    When the test host $h2 comes back
    And I run commctl "cluster restart retry-failed $cluster --watch"
    Then commctl succeeds
    And commctl prints "restart of cluster $cluster: finished"
    And commctl prints "done 2, in process 0, failed 0, pending 0"
